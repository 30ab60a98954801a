"""The trader (`python -m serving`, coming with the serving issue).

Imports only pipeline's light modules (settings, db, features): no tensorflow,
no airflow, no great_expectations, so that serving/requirements.txt is enough.
"""
