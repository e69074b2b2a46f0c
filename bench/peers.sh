#!/usr/bin/env bash
# `make peers`: the side-by-side benchmark of ../shared/peers (one load driver, one mock,
# one CPU accounting) with this checkout as its `product` peer; README "The benchmark".
#
#   make peers                                   # the product, Celery and the inline endpoint, ~5 min
#   make peers PEERS="product celery" MODES=rate # any of the harness's own variables
#
# The harness waits, before it measures, for a consumer on each of the product's queues
# it lists. Its list still holds `{ns}.saga`, a queue the product no longer has (issue 11's
# lean flow applies the payment outcome in the payment step). While it does, this runs
# a copy of the harness without that one word, and says so; the copy is removed after.
# Results go where the harness puts them ($PEERS_WORK/results, /tmp/checkout-peers by
# default). PEERS_HARNESS names another copy of the harness folder.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
harness="${PEERS_HARNESS:-$root/../shared/peers}"
if [ ! -f "$harness/run_all.sh" ] || [ ! -f "$harness/lib.sh" ]; then
  echo "make peers: no harness at $harness (run_all.sh, lib.sh);" \
    "set PEERS_HARNESS to the peers folder" >&2
  exit 2
fi

copy=""
cleanup() { [ -z "$copy" ] || rm -rf "$copy"; }
trap cleanup EXIT
if grep -Eq '^PRODUCT_QUEUES=\((.* )?saga( |\))' "$harness/lib.sh"; then
  copy="$(mktemp -d "${TMPDIR:-/tmp}/checkout-peers-harness.XXXXXX")"
  cp -R "$harness/." "$copy/"
  chmod -R u+w "$copy"
  sed -E -i '/^PRODUCT_QUEUES=\(/{s/\(saga /(/;s/ saga / /;s/ saga\)/)/}' "$copy/lib.sh"
  echo "make peers: $harness/lib.sh waits for a consumer on {ns}.saga, a queue the" \
    "product no longer has; running a copy without it: $(grep '^PRODUCT_QUEUES=' "$copy/lib.sh")" >&2
  harness="$copy"
fi

cd "$root"  # the harness takes the product from the directory it is run in
PEERS="${PEERS:-product celery naive}" bash "$harness/run_all.sh"
