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
    $(ls "$repo/csrc/netmatch.c" 2>/dev/null) -lnetfilter_log -lmnl
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# name keys fields [max_keys]: the default labels on a one-key flood and on 1,000 keys cycled;
# every field; the address labels of bench scenarios d (1,000 sources) and e (random sources
# into a full table of 10,000 keys: every record overflows). A field this build does not know
# shows as "n/a".
while read -r name keys fields max; do
    if ! valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$here/out/bin/hotpath" \
            "$records" "$keys" "$fields" $max >"$out/stdout" 2>"$out/stderr"; then
        printf '%-14s keys=%-8s n/a: %s\n' "$name" "$keys" "$(grep hotpath: "$out/stderr")"
        continue
    fi
    ir="$(callgrind_annotate --inclusive=yes "$out/cg" 2>/dev/null \
          | awk '/nfd_sock_dispatch/ { gsub(",", "", $1); print $1; exit }')"
    printf '%-14s keys=%-8s %s instructions/record (parse + fold)\n' "$name" "$keys" \
        "$(awk -v ir="$ir" -v n="$records" 'BEGIN { printf "%.1f", ir / n }')"
done <<CASES
default 1 group,prefix,indev,outdev,uid
default-1k 1000 group,prefix,indev,outdev,uid
all-fields 1 group,prefix,indev,outdev,physindev,physoutdev,uid,gid,family,proto,hook,mark,hwproto
addr-1k 1000 group,prefix,saddr,dport,proto
addr-random 4000000 group,prefix,saddr,dport,proto 10000
CASES
