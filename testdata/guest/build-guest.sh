#!/bin/bash
# build-guest.sh OUTDIR - build the DWCP test guest into OUTDIR:
#
#   vmlinuz        the host's Debian kernel (linux-image-amd64), copied as is
#   initramfs.gz   newc cpio (gzip): busybox-static, /init (init.sh), the virtio
#                  modules the payload disk needs, in load order
#   payload.img    raw tar of real files (ELF libraries and programs, Python, Perl and
#                  C-header text), padded to whole MiB; the guest streams it with O_DIRECT
#                  into a tmpfs so guest RAM holds a page cache of real files.
#                  Absent when DWCP_GUEST_PAYLOAD_MB=0.
#   manifest       key=value facts about the build (read by host/internal/testguest)
#   key            cache key; written last, so its presence means the build is complete
#
# The build is cached: when OUTDIR/key matches the key of the current inputs (this script,
# init.sh, kernel version and size, busybox version, payload size) nothing is rebuilt.
# Concurrent builds into one OUTDIR serialise on OUTDIR/.lock.
#
# Environment:
#   DWCP_GUEST_PAYLOAD_MB  payload disk budget in MiB (default 128; 0 = no payload disk)
#   DWCP_GUEST_KERNEL      kernel image to use (default: newest /boot/vmlinuz-*)
#
# Needs (Debian 12): linux-image-amd64 busybox-static cpio kmod (modprobe) tar gzip.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INIT_SRC=$HERE/init.sh
PAYLOAD_MB=${DWCP_GUEST_PAYLOAD_MB:-128}
BUSYBOX=${DWCP_GUEST_BUSYBOX:-/bin/busybox}

die() { echo "build-guest: $*" >&2; exit 1; }

case $PAYLOAD_MB in ''|*[!0-9]*) die "DWCP_GUEST_PAYLOAD_MB=$PAYLOAD_MB: want a whole number of MiB" ;; esac
[ "$PAYLOAD_MB" -le 2048 ] || die "DWCP_GUEST_PAYLOAD_MB=$PAYLOAD_MB: more than 2048 MiB"
[ -f "$INIT_SRC" ] || die "missing $INIT_SRC"
for tool in cpio gzip tar modprobe sha256sum flock; do
  command -v "$tool" >/dev/null || die "missing tool $tool (apt-get install -y cpio gzip tar kmod coreutils util-linux)"
done
[ -x "$BUSYBOX" ] || die "missing $BUSYBOX (apt-get install -y busybox-static)"
# A dynamic busybox would need its libc in the initramfs; only the static build works.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked (apt-get install -y busybox-static)"
fi

KERNEL=${DWCP_GUEST_KERNEL:-}
if [ -z "$KERNEL" ]; then
  KERNEL=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
fi
[ -n "$KERNEL" ] && [ -r "$KERNEL" ] || die "no readable kernel in /boot (apt-get install -y linux-image-amd64)"
KVER=${KERNEL##*/vmlinuz-}
MODDIR=/lib/modules/$KVER
[ -d "$MODDIR" ] || die "no modules for kernel $KVER in $MODDIR"
BBVER=$("$BUSYBOX" 2>&1 | head -n1 || true)

KEY=$( {
  echo "dwcp-guest v1"
  sha256sum "$0" "$INIT_SRC" | cut -d' ' -f1
  echo "kernel $KVER $(stat -c %s "$KERNEL")"
  echo "busybox $BBVER"
  echo "payload_mb $PAYLOAD_MB"
} | sha256sum | cut -d' ' -f1 )

up_to_date() {
  [ -f "$OUT/key" ] && [ "$(cat "$OUT/key")" = "$KEY" ] &&
    [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.gz" ] && [ -f "$OUT/manifest" ] &&
    { [ "$PAYLOAD_MB" -eq 0 ] || [ -f "$OUT/payload.img" ]; }
}

mkdir -p "$OUT"
if up_to_date; then
  echo "build-guest: $OUT is up to date (key ${KEY:0:12})"
  exit 0
fi
exec 9>"$OUT/.lock"
flock 9
# Another builder may have finished while this one waited for the lock.
if up_to_date; then
  echo "build-guest: $OUT is up to date (key ${KEY:0:12})"
  exit 0
fi

START=$(date +%s.%N)
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
rm -f "$OUT/key"
STAGE=$WORK/root
mkdir -p "$STAGE"/{bin,dev,proc,sys,run,data,lib/modules}

# busybox and one symlink per applet
cp "$BUSYBOX" "$STAGE/bin/busybox"
for applet in $("$STAGE/bin/busybox" --list); do
  [ -e "$STAGE/bin/$applet" ] || ln -s busybox "$STAGE/bin/$applet"
done
# The kernel opens /dev/console before /init mounts devtmpfs; without the node the early
# messages of /init are lost. mknod needs root, so it is best effort.
mknod -m 600 "$STAGE/dev/console" c 5 1 2>/dev/null || true

# virtio-blk and virtio-pci are modules in Debian's kernel. modprobe resolves their
# dependencies in load order; each module is loaded once.
: > "$STAGE/lib/modules/order"
for want in virtio_pci virtio_blk; do
  modprobe -S "$KVER" --show-depends "$want" | while read -r verb path _; do
    [ "$verb" = insmod ] || continue
    name=${path##*/}; name=${name%%.ko*}
    grep -qx "$name" "$STAGE/lib/modules/order" && continue
    case $path in
      *.ko.xz) xz -dc "$path" > "$STAGE/lib/modules/$name.ko" ;;
      *.ko.zst) zstd -qdc "$path" > "$STAGE/lib/modules/$name.ko" ;;
      *.ko.gz) gzip -dc "$path" > "$STAGE/lib/modules/$name.ko" ;;
      *.ko) cp "$path" "$STAGE/lib/modules/$name.ko" ;;
      *) die "unexpected module file $path" ;;
    esac
    echo "$name" >> "$STAGE/lib/modules/order"
  done
done
grep -qx virtio_blk "$STAGE/lib/modules/order" || die "virtio_blk module not found for $KVER"

install -m 755 "$INIT_SRC" "$STAGE/init"
( cd "$STAGE" && find . -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --quiet --reproducible ) |
  gzip -6 -n > "$WORK/initramfs.gz"
cp "$KERNEL" "$WORK/vmlinuz"

# Payload: a deterministic (path-sorted) selection of real files within a byte budget,
# per kind of file. Files over 8 MiB are skipped so one big library cannot fill a budget
# alone. The kinds are interleaved in proportion to their budgets, so any prefix of the
# image - the guest loads only as much as its RAM allows - holds the same mix.
payload_files=0
payload_bytes=0
if [ "$PAYLOAD_MB" -gt 0 ]; then
  kinds=0
  # pick BUDGET_KIB DIR... -- FIND_TESTS...: write "size<TAB>path" lines to list.N
  pick() {
    local budget=$(( $1 * 1024 )); shift
    local dirs=() d
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
      [ -d "$1" ] && dirs+=("$1")
      shift
    done
    shift
    kinds=$(( kinds + 1 ))
    : > "$WORK/list.$kinds"
    [ ${#dirs[@]} -gt 0 ] || return 0
    find "${dirs[@]}" -type f -size -8M "$@" -printf '%s\t%p\n' 2>/dev/null |
      LC_ALL=C sort -t "$(printf '\t')" -k2,2 -u |
      awk -F'\t' -v b="$budget" '$1 > 0 && t + $1 <= b { t += $1; print }' > "$WORK/list.$kinds"
  }
  # About 60 % ELF (program text and read-only data), 40 % text.
  kib=$(( PAYLOAD_MB * 1024 ))
  pick $(( kib * 60 / 100 )) /usr/lib/x86_64-linux-gnu /usr/bin -- \( -name '*.so*' -o -perm -u+x \)
  pick $(( kib * 20 / 100 )) /usr/lib/python3* -- -name '*.py'
  pick $(( kib * 10 / 100 )) /usr/share/perl /usr/share/perl5 -- \( -name '*.pm' -o -name '*.pl' \)
  pick $(( kib * 10 / 100 )) /usr/include -- -name '*.h'
  # Merge: always take the next file of the kind that is furthest behind its share.
  for k in $(seq "$kinds"); do cat "$WORK/list.$k"; echo "--"; done |
    awk -F'\t' '
      BEGIN { k = 0 }
      $0 == "--" { k++; next }
      { n[k]++; size[k, n[k]] = $1; path[k, n[k]] = $2; tot[k] += $1 }
      END {
        for (;;) {
          best = -1
          for (j = 0; j < k; j++) {
            if (next_[j] >= n[j]) continue
            r = sent[j] / tot[j]
            if (best < 0 || r < bestr) { best = j; bestr = r }
          }
          if (best < 0) break
          i = ++next_[best]
          if (seen[path[best, i]]++) continue
          sent[best] += size[best, i]
          print path[best, i]
        }
      }' > "$WORK/list"
  payload_files=$(wc -l < "$WORK/list")
  [ "$payload_files" -gt 0 ] || die "no payload files found under /usr"
  tar --create --file="$WORK/payload.img" --no-recursion --verbatim-files-from \
      --files-from="$WORK/list" --owner=0 --group=0 --numeric-owner \
      --mtime=@0 --format=gnu 2>"$WORK/tar.err" || {
    cat "$WORK/tar.err" >&2
    die "tar of the payload failed"
  }
  payload_bytes=$(stat -c %s "$WORK/payload.img")
  # Whole MiBs, so the guest's 1 MiB O_DIRECT reads never hit a partial block.
  truncate -s %1M "$WORK/payload.img"
fi

ELAPSED=$(awk -v a="$START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
{
  echo "kernel_version=$KVER"
  echo "kernel_source=$KERNEL"
  echo "busybox=$BBVER"
  echo "modules=$(tr '\n' ' ' < "$STAGE/lib/modules/order" | sed 's/ $//')"
  echo "payload_mb=$PAYLOAD_MB"
  echo "payload_files=$payload_files"
  echo "payload_tar_bytes=$payload_bytes"
  echo "build_seconds=$ELAPSED"
  echo "key=$KEY"
} > "$WORK/manifest"

for f in vmlinuz initramfs.gz manifest; do mv -f "$WORK/$f" "$OUT/$f"; done
if [ -f "$WORK/payload.img" ]; then
  mv -f "$WORK/payload.img" "$OUT/payload.img"
else
  rm -f "$OUT/payload.img"
fi
echo "$KEY" > "$WORK/key"
mv -f "$WORK/key" "$OUT/key"

echo "build-guest: kernel $KVER, initramfs $(stat -c %s "$OUT/initramfs.gz") bytes," \
  "payload $payload_files files / $payload_bytes bytes, ${ELAPSED}s -> $OUT"
