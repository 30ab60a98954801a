# The pipeline image: the official Airflow image plus cryptobots' pinned requirements,
# its library (pipeline/), DAGs and plugins. Every Airflow service of
# docker-compose.yaml runs it; the GPU worker builds it with
# --build-arg REQUIREMENTS=requirements-gpu.txt (the CPU set plus the CUDA libraries
# of TensorFlow and ONNX Runtime). The tag below must equal the apache-airflow pin of
# requirements.txt (tests/test_compose.py checks it).
FROM apache/airflow:3.3.2-python3.11

# requirements.txt or requirements-gpu.txt
ARG REQUIREMENTS=requirements.txt

# Installed as the image's `airflow` user, the way the Airflow image is extended.
COPY requirements.txt requirements-gpu.txt /tmp/requirements/
RUN pip install --no-cache-dir -r "/tmp/requirements/${REQUIREMENTS}"

USER root
COPY docker/secrets-env.sh /usr/local/bin/secrets-env
# The shared cryptobots state (snapshots, training runs, local artifacts) lives on a
# volume mounted here; group 0 as everywhere in the Airflow image.
RUN chmod 755 /usr/local/bin/secrets-env \
    && mkdir -p /opt/cryptobots /var/lib/cryptobots \
    && chown airflow:0 /opt/cryptobots /var/lib/cryptobots \
    && chmod 775 /opt/cryptobots /var/lib/cryptobots
USER airflow

COPY --chown=airflow:0 pipeline/ /opt/cryptobots/pipeline/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/

ENV PYTHONPATH=/opt/cryptobots:/opt/airflow/plugins \
    CRYPTOBOTS_VAR_DIR=/var/lib/cryptobots \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

# secrets-env exports the Docker secrets named like environment variables, then
# hands over to the Airflow image's own entrypoint (which prefixes `airflow` when
# the command does not start with airflow, bash or python).
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/usr/local/bin/secrets-env", "/entrypoint"]
CMD []
