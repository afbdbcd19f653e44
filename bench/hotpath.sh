#!/bin/bash
# Instructions per record of nflogd's C hot path (record parse + fold), counted by callgrind: exact
# and repeatable on a shared, noisy machine where timings are not. Prints one line per case.
#   bench/hotpath.sh [RECORDS]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
records="${1:-200000}"
command -v valgrind >/dev/null || { echo "hotpath.sh: valgrind is not installed" >&2; exit 2; }
mkdir -p "$here/out/bin"
gcc -std=gnu11 -O2 -Wall -Wextra -Werror -I"$repo/csrc" -o "$here/out/bin/hotpath" \
    "$here/hotpath.c" "$repo/csrc/record.c" "$repo/csrc/agg_table.c" "$repo/csrc/sock.c" \
    -lnetfilter_log -lmnl
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# name keys fields: the default labels on a one-key flood, on 1,000 keys; every field.
while read -r name keys fields; do
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$here/out/bin/hotpath" \
        "$records" "$keys" "$fields" >"$out/stdout" 2>"$out/stderr"
    ir="$(callgrind_annotate --inclusive=yes "$out/cg" 2>/dev/null \
          | awk '/nfd_sock_dispatch/ { gsub(",", "", $1); print $1; exit }')"
    printf '%-14s keys=%-5s %s instructions/record (parse + fold)\n' "$name" "$keys" \
        "$(awk -v ir="$ir" -v n="$records" 'BEGIN { printf "%.1f", ir / n }')"
done <<CASES
default 1 group,prefix,indev,outdev,uid
default-1k 1000 group,prefix,indev,outdev,uid
all-fields 1 group,prefix,indev,outdev,physindev,physoutdev,uid,gid,family,proto,hook,mark,hwproto
CASES
