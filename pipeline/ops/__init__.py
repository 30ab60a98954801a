"""Running it: `make run`'s launch, doctor, the Airflow and Celery set-up."""
