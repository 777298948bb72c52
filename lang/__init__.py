"""The frontend language: gen, select, fork, chat roles and @function programs."""
