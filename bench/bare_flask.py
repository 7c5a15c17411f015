"""The reference for bench/load.py: a bare Flask app with one JSON route, nothing else
(no auth, no database, no rate limit, no request hooks). Served by gunicorn with the same
worker settings as Spacio's web process, it is the ceiling one gevent worker can reach."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/ping")
def ping():
    return jsonify(status="ok")
