"""The pages cryptobots adds to the Airflow UI, and their templates."""
