#!/usr/bin/env bash
# The production layout on one machine: nginx in front; plain HTTP to granian (WSGI), websockets
# to uvicorn (ASGI); a Celery worker and Celery beat. Scale out by running the same pieces on
# more machines behind a load balancer: the web processes keep no state.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DATABASE_URL:?set DATABASE_URL (postgres://...) for the production layout}"
: "${REDIS_URL:?set REDIS_URL (redis://...) for the production layout}"
: "${SECRET_KEY:=}"
if [[ -z "$SECRET_KEY" && -z "${SECRET_KEY_FILE:-}" ]]; then
  echo "set SECRET_KEY or SECRET_KEY_FILE for the production layout" >&2
  exit 2
fi

BIN=${BIN:-.venv/bin}
LISTEN=${LISTEN:-127.0.0.1:8000}
WSGI_PORT=${WSGI_PORT:-8001}
ASGI_PORT=${ASGI_PORT:-8002}
WEB_WORKERS=${WEB_WORKERS:-2}
WEB_THREADS=${WEB_THREADS:-8}
WS_WORKERS=${WS_WORKERS:-1}
CELERY_CONCURRENCY=${CELERY_CONCURRENCY:-2}
RUN_DIR=${RUN_DIR:-var/run}
export STATIC_MANIFEST=true
# nginx below is the proxy in front of the desk: sign-in throttling takes the client's address
# from the X-Forwarded-For it writes. Add the addresses of any proxy in front of nginx.
export TRUSTED_PROXIES=${TRUSTED_PROXIES:-127.0.0.1,::1}

mkdir -p "$RUN_DIR"
"$BIN/python" manage.py migrate --no-input -v0
"$BIN/python" manage.py collectstatic --no-input -v0

export NGINX_PREFIX="$(cd "$RUN_DIR" && pwd)" LISTEN_ADDRESS="$LISTEN" \
  WSGI_ADDRESS="127.0.0.1:$WSGI_PORT" ASGI_ADDRESS="127.0.0.1:$ASGI_PORT"
envsubst '${NGINX_PREFIX} ${LISTEN_ADDRESS} ${WSGI_ADDRESS} ${ASGI_ADDRESS}' \
  < deploy/nginx.conf.template > "$RUN_DIR/nginx.conf"

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

"$BIN/granian" --interface wsgi --host 127.0.0.1 --port "$WSGI_PORT" --workers "$WEB_WORKERS" \
  --blocking-threads "$WEB_THREADS" --no-access-log incidentdesk.wsgi:application &
pids+=($!)
"$BIN/uvicorn" incidentdesk.asgi:application --host 127.0.0.1 --port "$ASGI_PORT" \
  --workers "$WS_WORKERS" --lifespan on --no-access-log --ws-per-message-deflate false &
pids+=($!)
"$BIN/celery" -A incidentdesk worker --loglevel INFO --concurrency "$CELERY_CONCURRENCY" &
pids+=($!)
"$BIN/celery" -A incidentdesk beat --loglevel INFO --schedule "$RUN_DIR/celerybeat-schedule" &
pids+=($!)
nginx -p "$RUN_DIR" -c "$NGINX_PREFIX/nginx.conf" &
pids+=($!)

echo "IncidentDesk (production layout): http://$LISTEN"
# Ready once the database and Redis answer and the worker and beat beat: /readyz says so, or
# names what is failing (load balancers ask /readyz; /healthz only says the process answers).
"$BIN/python" deploy/ready.py "http://$LISTEN/readyz" --timeout 120 || true
# Stop everything as soon as any one piece exits.
wait -n
exit 1
