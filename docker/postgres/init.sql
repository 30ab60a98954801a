-- Run by the postgres image on the first start of an empty data volume, as
-- POSTGRES_USER (cryptobots), after it created POSTGRES_DB (cryptobots: market data,
-- models, trading state). This adds Airflow's metadata database beside it.
CREATE DATABASE airflow;
