#!/usr/bin/env bash
# The avray MLflow tracking server: runs and the model registry in PostgreSQL, artifacts
# (checkpoints, generated answers, evaluation tables) proxied by the server to S3, so a job
# needs only the server's URL and never S3 or database credentials of its own.
#
#   PGPASSWORD=... MLFLOW_BACKEND_URI=postgresql+psycopg2://mlflow@db.internal:5432/mlflow \
#   MLFLOW_ARTIFACTS=s3://my-bucket/mlflow HOST=0.0.0.0 cluster/mlflow/start_server.sh
#
# Environment, [default]:
#   MLFLOW_BACKEND_URI    SQLAlchemy URI of the run + registry store
#                         [postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow]. Name the
#                         driver: SQLAlchemy >= 2.1 maps a bare postgresql:// to psycopg 3,
#                         avray installs psycopg2. The password may be in the URI or, kept out
#                         of it, in PGPASSWORD or ~/.pgpass (libpq reads both). The schema is
#                         created / migrated on start.
#   MLFLOW_ARTIFACTS      where the server writes artifacts [s3://mlflow/artifacts]. S3
#                         credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an
#                         instance / IRSA role); MLFLOW_S3_ENDPOINT_URL for MinIO, Ceph, ...
#   HOST, PORT            bind address and port [127.0.0.1, 5000]; 0.0.0.0 to serve others
#   MLFLOW_WORKERS        server worker processes [4]
#   MLFLOW_ALLOWED_HOSTS  Host headers to accept, comma-separated, wildcards allowed. Unset,
#                         MLflow accepts only localhost and private IPs, so a DNS name
#                         (mlflow.avray.svc.cluster.local:5000) must be listed; listing
#                         replaces the default, so add localhost:* for port-forwarding.
#   MLFLOW_AUTH           basic-auth: MLflow's users and permissions (the admin password from
#                         MLFLOW_AUTH_ADMIN_PASSWORD, settings from MLFLOW_AUTH_CONFIG_PATH)
# Further arguments go to `mlflow server` unchanged.
set -euo pipefail

MLFLOW_BACKEND_URI="${MLFLOW_BACKEND_URI:-postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow}"
MLFLOW_ARTIFACTS="${MLFLOW_ARTIFACTS:-s3://mlflow/artifacts}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"
MLFLOW_WORKERS="${MLFLOW_WORKERS:-4}"

# The store URI goes through the environment (mlflow server's own MLFLOW_BACKEND_STORE_URI),
# not the command line, so a password in it does not show in `ps`.
export MLFLOW_BACKEND_STORE_URI="$MLFLOW_BACKEND_URI"
args=(server
      --artifacts-destination "$MLFLOW_ARTIFACTS" --serve-artifacts
      --host "$HOST" --port "$PORT" --workers "$MLFLOW_WORKERS")
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
if [ -n "${MLFLOW_AUTH:-}" ]; then
  args+=(--app-name "$MLFLOW_AUTH")
fi

echo "mlflow server on ${HOST}:${PORT}:" \
     "store ${MLFLOW_BACKEND_URI%%://*}://..., artifacts ${MLFLOW_ARTIFACTS}" >&2
exec mlflow "${args[@]}" "$@"
