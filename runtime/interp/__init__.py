"""The program side: the interpreter that runs IR nodes, and the backends it runs them on."""
