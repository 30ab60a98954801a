# The trader image: slim Python with serving/requirements.txt alone (ONNX Runtime,
# ccxt, SQLAlchemy, FastAPI; no TensorFlow, Airflow or Great Expectations) and only
# the code the trader and the exchange simulator run: pipeline/ and serving/.
# Python's minor version is the one the requirements files are compiled for.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY serving/requirements.txt /tmp/serving-requirements.txt
RUN pip install -r /tmp/serving-requirements.txt && rm /tmp/serving-requirements.txt

COPY docker/secrets-env.sh /usr/local/bin/secrets-env
# Same uid and group as the Airflow image's user, so both can share volumes.
RUN chmod 755 /usr/local/bin/secrets-env \
    && useradd --uid 50000 --gid 0 --create-home cryptobots \
    && mkdir -p /opt/cryptobots /var/lib/cryptobots \
    && chown 50000:0 /var/lib/cryptobots \
    && chmod 775 /var/lib/cryptobots

WORKDIR /opt/cryptobots
COPY pipeline/ pipeline/
COPY serving/ serving/

ENV PYTHONPATH=/opt/cryptobots \
    CRYPTOBOTS_VAR_DIR=/var/lib/cryptobots \
    CRYPTOBOTS_SERVING__HOST=0.0.0.0 \
    CRYPTOBOTS_SERVING__PORT=8790

USER cryptobots
EXPOSE 8790
ENTRYPOINT ["/usr/local/bin/secrets-env"]
CMD ["python", "-m", "serving"]
