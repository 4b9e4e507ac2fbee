"""The real ASL executed in moto's Step Functions interpreter, with Lambda dispatched in process."""
