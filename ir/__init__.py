"""The program IR: node types, sampling parameters as one record, the tracer and its printer."""
