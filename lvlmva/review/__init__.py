"""The review app: a local web app over a critique run (`lvlmva review RUN`).

`app.make_app` builds the aiohttp application (JSON API + the page in `static/`, plain HTML, CSS
and an ES module, no build step); `server.serve` binds and runs it; `security` holds the guards;
`panels` draws the colour-scaled attribution and mask; `palette` measures how the cluster
colours look to colour-blind readers; `synthetic` builds runs for tests and benchmarks.
"""
