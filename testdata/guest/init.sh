#!/bin/sh
# /init of the DWCP test guest: busybox ash as PID 1.
#
# It gives the guest the memory of a small server - a page cache of real files (the
# payload disk, copied into a tmpfs), program text, a heap, free pages - and keeps
# changing it at a steady rate, so migration streams captured from it look like real
# ones. Serial console protocol (parsed by host/internal/testguest):
#
#   DWCP hb=N up=SECONDS ...    once a second from early boot; N counts from 0 at boot,
#                               so a guest that restarted shows a small N again
#   DWCP sum=MD5 mb=M n=K       MD5 of the fixed region (/data/sum.bin, M MiB), every
#                               sum_every seconds; the region is never written after
#                               setup, so the value must survive a migration unchanged
#   DWCP config ...             the workload knobs in effect
#   DWCP ready                  the whole workload is running
#   DWCP error ...              a knob was rejected or a setup step failed
#
# Knobs on the kernel command line (defaults scale with guest RAM where marked *):
#   dwcp.dirty_kbps=1024   KiB/s rewritten in the bulk region in ten ticks a second,
#                          alternating random data and text chunks (0 = off)
#   dwcp.dirty_mb=*        size of the bulk region (RAM/16, at least 4)
#   dwcp.sparse_per_s=20   16-byte writes per second at random places of the sparse
#                          region (0 = off)
#   dwcp.sparse_mb=*       size of the sparse region, real text (RAM/32, at least 2)
#   dwcp.heap_mb=*         text held as strings in a long-running awk heap (RAM/32, >= 2)
#   dwcp.sum_mb=4          size of the checksummed region: the first sum_mb MiB of the
#                          payload disk, or `seq 1 N` output when there is no disk
#   dwcp.sum_every=5       seconds between checksum lines
#   dwcp.payload_mb=*      MiB of the payload disk loaded into the tmpfs (about 45 % of
#                          RAM minus the regions above, at most the disk size)
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs -o size=1m,mode=755 tmpfs /run
mount -t tmpfs -o size=95%,mode=755 tmpfs /data

say() { echo "DWCP $*"; }
# stage NAME reports the uptime at which a setup step finished (boot timings in docs).
stage() {
  read -r up _ < /proc/uptime
  say "stage $1 up=$up"
}

# now_cs sets NOW_CS to the uptime in centiseconds without forking (/proc/uptime has
# two decimals; the "1"-prefix keeps a fraction like "08" from being read as octal).
now_cs() {
  read -r up _ < /proc/uptime
  NOW_CS=$(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

# pace T sleeps until uptime T (centiseconds), so loops keep a steady rate however long
# their work took. A loop that fell more than 2 s behind restarts its schedule instead
# of bursting to catch up.
pace() {
  now_cs
  d=$(( $1 - NOW_CS ))
  if [ $d -lt -200 ]; then
    PACE_T=$NOW_CS
    return
  fi
  PACE_T=$1
  [ $d -gt 0 ] || return 0
  f=$(( d % 100 ))
  [ $f -lt 10 ] && f=0$f
  sleep $(( d / 100 )).$f
}

# Heartbeat first, so a hang anywhere in the setup below is visible on the console.
(
  hb=0
  dk=0
  sp=0
  now_cs
  t=$NOW_CS
  while :; do
    read -r up _ < /proc/uptime
    # A counter file caught between its writer's truncate and write reads empty;
    # the last value stands in for it.
    v=; [ -r /run/dirty.kb ] && read -r v < /run/dirty.kb
    [ -n "$v" ] && dk=$v
    v=; [ -r /run/sparse.n ] && read -r v < /run/sparse.n
    [ -n "$v" ] && sp=$v
    echo "DWCP hb=$hb up=$up dirty_kb=$dk sparse=$sp"
    hb=$(( hb + 1 ))
    pace $(( t + 100 ))
    t=$PACE_T
  done
) &

mem_kb=0
while read -r k v _; do
  if [ "$k" = MemTotal: ]; then mem_kb=$v; break; fi
done < /proc/meminfo
mem_mb=$(( mem_kb / 1024 ))

atleast() { if [ "$1" -lt "$2" ]; then echo "$2"; else echo "$1"; fi; }
DIRTY_KBPS=1024
DIRTY_MB=$(atleast $(( mem_mb / 16 )) 4)
SPARSE_PER_S=20
SPARSE_MB=$(atleast $(( mem_mb / 32 )) 2)
HEAP_MB=$(atleast $(( mem_mb / 32 )) 2)
SUM_MB=4
SUM_EVERY=5
PAYLOAD_MB=auto

for kv in $(cat /proc/cmdline); do
  case $kv in
    dwcp.*=*) ;;
    *) continue ;;
  esac
  k=${kv%%=*}
  v=${kv#*=}
  case $v in
    ''|*[!0-9]*) say "error: $kv: want a whole number, keeping the default"; continue ;;
  esac
  case $k in
    dwcp.dirty_kbps) DIRTY_KBPS=$v ;;
    dwcp.dirty_mb) DIRTY_MB=$v ;;
    dwcp.sparse_per_s) SPARSE_PER_S=$v ;;
    dwcp.sparse_mb) SPARSE_MB=$v ;;
    dwcp.heap_mb) HEAP_MB=$v ;;
    dwcp.sum_mb) SUM_MB=$v ;;
    dwcp.sum_every) SUM_EVERY=$v ;;
    dwcp.payload_mb) PAYLOAD_MB=$v ;;
    *) say "error: unknown knob $k" ;;
  esac
done
# Regions must be non-empty for the writers' offset arithmetic.
[ "$DIRTY_MB" -ge 1 ] || DIRTY_MB=1
[ "$SPARSE_MB" -ge 1 ] || SPARSE_MB=1
[ "$SUM_MB" -ge 1 ] || SUM_MB=1
[ "$SUM_EVERY" -ge 1 ] || SUM_EVERY=1

stage init
# Payload disk: /dev/vda, a raw tar image, read-only.
disk_mb=0
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko 2>/dev/null
done
# Only wait for the disk when a virtio device exists at all: a guest without the
# payload disk must not lose seconds here.
i=0
if [ -n "$(ls /sys/bus/virtio/devices 2>/dev/null)" ]; then
  while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$(( i + 1 )); done
fi
if [ -b /dev/vda ]; then
  read -r sectors < /sys/block/vda/size
  disk_mb=$(( sectors / 2048 ))
fi
if [ "$PAYLOAD_MB" = auto ]; then
  PAYLOAD_MB=$(( mem_mb * 45 / 100 - DIRTY_MB - SPARSE_MB - SUM_MB - 2 * HEAP_MB ))
  [ $PAYLOAD_MB -ge 0 ] || PAYLOAD_MB=0
fi
[ $PAYLOAD_MB -le $disk_mb ] || PAYLOAD_MB=$disk_mb

mkdir -p /data/payload
if [ $PAYLOAD_MB -gt 0 ]; then
  # O_DIRECT keeps the block layer's own page cache out of guest RAM: the only copy of
  # the payload is the tmpfs one. A payload cut short mid-file is expected, so tar's
  # complaint about the truncated archive is dropped.
  dd if=/dev/vda bs=1M count=$PAYLOAD_MB iflag=direct 2>/dev/null |
    tar -x -C /data/payload 2>/dev/null
fi
stage payload

# Fixed region for the checksum: real bytes from the disk when there is one, else text
# the host can regenerate.
sum_src=disk
if [ $disk_mb -ge $SUM_MB ]; then
  dd if=/dev/vda of=/data/sum.bin bs=1M count=$SUM_MB iflag=direct 2>/dev/null
else
  sum_src=seq
  seq 1 99999999 | head -c $(( SUM_MB * 1048576 )) > /data/sum.bin
fi
stage sum

# textsrc prints the payload's text files (sorted, or reversed with -r), then
# generated log lines, so there is always enough text even without a payload.
textsrc() {
  find /data/payload -type f \( -name '*.py' -o -name '*.h' -o -name '*.pm' -o -name '*.pl' \) |
    sort $1 | xargs cat 2>/dev/null
  awk 'BEGIN { srand(7); for (;;) printf "%d.%03d host%02d GET /v1/items/%d?user=%d 200 %d\n",
    1700000000 + n++, int(rand() * 1000), int(rand() * 40), int(rand() * 1e6),
    int(rand() * 1e5), int(rand() * 65536) }'
}

# Sparse region: real text, poked at random 16-byte slots.
textsrc | head -c $(( SPARSE_MB * 1048576 )) > /data/sparse.txt
stage sparse

# Heap: awk keeps every line it reads as a string; its input never ends (the sleep holds
# the pipe open), so the heap stays allocated for the life of the guest.
( textsrc -r | head -c $(( HEAP_MB * 1048576 )); exec sleep 2147483647 ) |
  awk '{ lines[NR] = $0 }' &

# Both writers run ten ticks a second, so the guest dirties memory continuously, as a
# server does, rather than in one burst a second: a migration pass of any length
# then finds pages to re-send.
#
# Bulk region: starts as random data, then DIRTY_KBPS KiB a second are rewritten, slot
# after slot; even ticks write random bytes, odd ticks text copied from the sparse
# region at a 1 KiB granular offset (so the copies do not line up with its pages).
# Rates under 40 KiB/s tick less often, 4 KiB at a time.
dd if=/dev/urandom of=/data/dirty.bin bs=1M count=$DIRTY_MB 2>/dev/null
stage dirty
if [ $DIRTY_KBPS -gt 0 ]; then
  (
    ticks=10
    [ $DIRTY_KBPS -ge 40 ] || ticks=$(( DIRTY_KBPS / 4 ))
    [ $ticks -ge 1 ] || ticks=1
    chunk=$(( DIRTY_KBPS / ticks ))
    step=$(( 100 / ticks ))
    slots=$(( DIRTY_MB * 1024 / chunk ))
    [ $slots -ge 1 ] || slots=1
    text_kb=$(( SPARSE_MB * 1024 - chunk ))
    i=0
    now_cs
    t=$NOW_CS
    while :; do
      seek=$(( (i % slots) * chunk ))
      if [ $(( i % 2 )) -eq 1 ] && [ $text_kb -gt 0 ]; then
        dd if=/data/sparse.txt of=/data/dirty.bin bs=1024 count=$chunk \
          skip=$(( (i * 7919) % text_kb )) seek=$seek conv=notrunc 2>/dev/null
      else
        dd if=/dev/urandom of=/data/dirty.bin bs=1024 count=$chunk \
          seek=$seek conv=notrunc 2>/dev/null
      fi
      i=$(( i + 1 ))
      echo $(( i * chunk )) > /run/dirty.kb
      pace $(( t + step ))
      t=$PACE_T
    done
  ) &
fi

# Sparse writer: SPARSE_PER_S 16-byte writes a second at random 16-byte slots of the
# text region, spread over the ten ticks.
if [ $SPARSE_PER_S -gt 0 ]; then
  (
    slots=$(( SPARSE_MB * 65536 ))
    n=0
    tick=0
    now_cs
    t=$NOW_CS
    while :; do
      k=$(( tick % 10 ))
      w=$(( (k + 1) * SPARSE_PER_S / 10 - k * SPARSE_PER_S / 10 ))
      while [ $w -gt 0 ]; do
        printf 'w%06d t%06d\n' $(( n % 1000000 )) $(( t / 100 % 1000000 )) > /run/tick
        dd if=/run/tick of=/data/sparse.txt bs=16 count=1 conv=notrunc \
          seek=$(( (RANDOM * 32768 + RANDOM) % slots )) 2>/dev/null
        w=$(( w - 1 ))
        n=$(( n + 1 ))
      done
      tick=$(( tick + 1 ))
      echo $n > /run/sparse.n
      pace $(( t + 10 ))
      t=$PACE_T
    done
  ) &
fi

first=$(md5sum /data/sum.bin)
(
  k=0
  while :; do
    s=$(md5sum /data/sum.bin)
    say "sum=${s%% *} mb=$SUM_MB n=$k"
    k=$(( k + 1 ))
    sleep $SUM_EVERY
  done
) &

payload_kb=$(du -sk /data/payload)
say "config mem_mb=$mem_mb disk_mb=$disk_mb payload_mb=$PAYLOAD_MB payload_kb=${payload_kb%%[!0-9]*}" \
  "dirty_kbps=$DIRTY_KBPS dirty_mb=$DIRTY_MB sparse_per_s=$SPARSE_PER_S sparse_mb=$SPARSE_MB" \
  "heap_mb=$HEAP_MB sum_mb=$SUM_MB sum_every=$SUM_EVERY sum_src=$sum_src sum0=${first%% *}"
meminfo=
while read -r k v _; do
  case $k in
    MemTotal:|MemFree:|Shmem:|AnonPages:|Cached:) meminfo="$meminfo ${k%:}_kb=$v" ;;
  esac
done < /proc/meminfo
say "mem$meminfo"
say "ready"

# PID 1 must never exit (the kernel would panic); it only reaps children from here on.
while :; do
  wait
  sleep 3600
done
