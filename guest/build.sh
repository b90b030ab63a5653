#!/bin/bash
# Build tine's default guest from Debian packages into OUT_DIR.
#
#   guest/build.sh OUT_DIR        (as root, on Debian 12 with apt lists present)
#
# Produces, in OUT_DIR:
#   vmlinux-HASH        uncompressed ELF kernel (PVH entry) from linux-image-*-cloud-amd64
#   initrd-HASH.img     busybox + virtio modules; mounts /dev/vda and switch_roots to it
#   rootfs-HASH.img     raw ext4: busybox init, which respawns /usr/bin/tine-agent
#   manifest.json       names of the above, kernel command line, versions, inputs_hash
#
# Image files are named by content so that a rebuild never changes a file an existing
# instance uses (qcow2 overlays name rootfs-HASH.img as their backing file). Old files are
# left in place. manifest.json is renamed into place last, so a crash never leaves a guest
# that looks valid but is not. If OUT_DIR/manifest.json already has this build's
# inputs_hash and its files exist, nothing is done.
#
# Environment:
#   TINE_AGENT_BIN         use this static tine-agent instead of building one
#   TINE_AGENT_TARGET_DIR  cargo target dir for the agent
#                          (default: ${CARGO_TARGET_DIR:-REPO/target}/guest-agent)
set -euo pipefail

log() { echo "[guest] $*"; }
die() { echo "[guest] error: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
[ "$(id -u)" -eq 0 ] || die "must run as root (image files must be owned by root)"
OUT=$(realpath -m "$1")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
ROOTFS_SIZE=256M
CMDLINE="console=ttyS0 quiet panic=-1 pci=off reboot=t apparmor=0 audit=0 8250.nr_uarts=1 cryptomgr.notests"
# Always loaded: the transport (and the root fs driver, if modular; added below).
CORE_MODULES="virtio_mmio"
# Loaded by the initramfs only when a virtio device of that id is present.
DEVICE_MODULES="0x0001:virtio_net 0x0002:virtio_blk 0x0003:virtio_console 0x0004:virtio_rng"
start=$(date +%s)
# One build per output directory at a time: two builds racing on the same
# content-named files once left a truncated initrd behind.
mkdir -p "$OUT"
exec 9>"$OUT/.build.lock"
flock 9 || die "cannot lock $OUT/.build.lock"

# --- host tools ---------------------------------------------------------------------
missing=()
for pkg in busybox-static cpio lz4 e2fsprogs qemu-utils file binutils; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing host tools: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# --- resolve package versions (no download yet) ---------------------------------------
candidate() {
    local v
    v=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate for $1 (run apt-get update)"
    echo "$v"
}
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ && !found++ { print $2 }')
[ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 (run apt-get update)"
KVER=${KPKG#linux-image-}
KPKG_VER=$(candidate "$KPKG")
BB_VER=$(candidate busybox-static)
log "kernel $KPKG $KPKG_VER, busybox-static $BB_VER"

# --- the agent: a static binary ---------------------------------------------------------
if [ -n "${TINE_AGENT_BIN:-}" ]; then
    AGENT=$(realpath "$TINE_AGENT_BIN")
else
    target_dir=${TINE_AGENT_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/guest-agent}
    # A relative dir means relative to the repo (as cargo reads it there).
    case $target_dir in /*) ;; *) target_dir=$REPO/$target_dir ;; esac
    log "building tine-agent (static, release) in $target_dir"
    (
        cd "$REPO"
        unset CARGO_ENCODED_RUSTFLAGS
        RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
            cargo build --quiet --release -p tine-agent --target x86_64-unknown-linux-gnu
    )
    AGENT=$target_dir/x86_64-unknown-linux-gnu/release/tine-agent
fi
file -b "$AGENT" | grep -Eq 'statically linked|static-pie linked' ||
    die "$AGENT is not statically linked: $(file -b "$AGENT")"
AGENT_SHA=$(sha256sum "$AGENT" | cut -d' ' -f1)

# --- cache check --------------------------------------------------------------------
INPUTS_HASH=$(
    {
        (cd "$HERE" && find . -type f -not -name '*.swp' -print0 | sort -z | xargs -0 sha256sum)
        echo "kernel $KPKG $KPKG_VER"
        echo "busybox-static $BB_VER"
        echo "agent $AGENT_SHA"
        echo "cmdline $CMDLINE"
        echo "modules $CORE_MODULES $DEVICE_MODULES"
    } | sha256sum | cut -d' ' -f1
)
TAG=${INPUTS_HASH:0:16}
INITRD_FILE=initrd-$TAG.img
ROOTFS_FILE=rootfs-$TAG.img

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 # concurrent builds into one OUT_DIR take turns

manifest_value() { sed -n "s/^  \"$1\": \"\(.*\)\",\?$/\1/p" "$OUT/manifest.json"; }
if [ -f "$OUT/manifest.json" ] && [ "$(manifest_value inputs_hash)" = "$INPUTS_HASH" ] &&
    [ -f "$OUT/$(manifest_value kernel)" ] && [ -f "$OUT/$(manifest_value initrd)" ] &&
    [ -f "$OUT/$(manifest_value rootfs)" ]; then
    log "up to date: $OUT (inputs $TAG), nothing to do"
    exit 0
fi
log "building guest $TAG into $OUT"

STAGE=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# --- packages -----------------------------------------------------------------------
DEBS=$OUT/.debs
mkdir -p "$DEBS"
fetch_deb() { # name version -> path of the .deb
    local deb
    deb="$DEBS/${1}_${2//:/%3a}_amd64.deb"
    if [ ! -f "$deb" ]; then
        log "downloading $1 $2" >&2
        (cd "$STAGE" && apt-get download -q "$1=$2" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
        mv "$STAGE/$(basename "$deb")" "$deb" || die "apt-get download $1=$2 failed"
    fi
    echo "$deb"
}
KDEB=$(fetch_deb "$KPKG" "$KPKG_VER")
BBDEB=$(fetch_deb busybox-static "$BB_VER")
# Keep only the current .debs.
find "$DEBS" -name '*.deb' -not -path "$KDEB" -not -path "$BBDEB" -delete
dpkg -x "$KDEB" "$STAGE/kernel"
dpkg -x "$BBDEB" "$STAGE/busybox"
BUSYBOX=$STAGE/busybox/bin/busybox
MODDIR=$STAGE/kernel/lib/modules/$KVER
KCONFIG=$STAGE/kernel/boot/config-$KVER

# --- vmlinux: the LZ4 payload of the bzImage, for PVH boot -----------------------------
log "extracting vmlinux"
VMLINUZ=$STAGE/kernel/boot/vmlinuz-$KVER
found=
for off in $(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$VMLINUZ" | cut -d: -f1); do
    # lz4 complains about the bytes after the stream; the ELF check below is what counts.
    tail -c +$((off + 1)) "$VMLINUZ" | lz4 -dc >"$STAGE/vmlinux" 2>/dev/null || true
    if file -b "$STAGE/vmlinux" | grep -q '^ELF 64-bit LSB executable'; then
        found=1
        break
    fi
done
[ -n "$found" ] || die "no LZ4-compressed ELF kernel found in $VMLINUZ"
KERNEL_FILE=vmlinux-$(sha256sum "$STAGE/vmlinux" | cut -c1-16)

# --- modules, in dependency order -------------------------------------------------------
module_file() {
    find "$MODDIR/kernel" \( -name "$1.ko" -o -name "${1//_/-}.ko" \) -print -quit
}
declare -A seen=()
order=()
add_module() { # appends $1 after its dependencies to $order, once per list
    local name=$1 file deps dep
    [ -z "${seen[$name]:-}" ] || return 0
    seen[$name]=1
    file=$(module_file "$name")
    [ -n "$file" ] || die "module $name not found in $KPKG"
    deps=$(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | tr ',' ' ')
    for dep in $deps; do add_module "$dep"; done
    order+=("$name")
}
module_list() { # NAME... -> dependency-ordered list, one a line
    seen=()
    order=()
    for m in "$@"; do add_module "$m"; done
    printf '%s\n' "${order[@]}"
}
config_is_module() { grep -qx "CONFIG_$1=m" "$KCONFIG"; }
# The root filesystem's driver, if this kernel builds it as a module.
config_is_module EXT4_FS && CORE_MODULES="$CORE_MODULES ext4"
config_is_module CRYPTO_CRC32C && CORE_MODULES="$CORE_MODULES crc32c_generic"
mkdir -p "$STAGE/modules"
# shellcheck disable=SC2086 # word splitting intended
module_list $CORE_MODULES >"$STAGE/modules/core"
for entry in $DEVICE_MODULES; do
    module_list "${entry#*:}" >"$STAGE/modules/${entry%%:*}"
done
for list in "$STAGE"/modules/*; do
    log "modules for $(basename "$list"): $(tr '\n' ' ' <"$list")"
done

# --- initrd -------------------------------------------------------------------------
log "building initrd"
I=$STAGE/initrd
mkdir -p "$I"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$BUSYBOX" "$I/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$I/bin/$applet"
done
cp "$STAGE"/modules/* "$I/lib/modules/"
for m in $(sort -u "$STAGE"/modules/*); do
    cp "$(module_file "$m")" "$I/lib/modules/$m.ko"
done
install -m 0755 "$HERE/initrd/init" "$I/init"
mknod -m 600 "$I/dev/console" c 5 1
(cd "$I" && find . -print0 | LC_ALL=C sort -z |
    cpio --quiet -o -0 -H newc -R 0:0 | gzip -1 -n) >"$STAGE/$INITRD_FILE"

# --- rootfs -------------------------------------------------------------------------
log "building rootfs ($ROOTFS_SIZE ext4)"
R=$STAGE/rootfs
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,dev,proc,sys,tmp,run,root,mnt,var/tmp,var/log}
chmod 1777 "$R/tmp" "$R/var/tmp"
chmod 0700 "$R/root"
cp "$BUSYBOX" "$R/bin/busybox"
for applet in $("$BUSYBOX" --list-full); do
    # Paths are relative to /, e.g. usr/bin/awk; all point at /bin/busybox.
    [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$R/$applet"
done
cp -a "$HERE/rootfs/." "$R/"
# Debug info is for the host; the guest gets a small binary.
strip -o "$R/usr/bin/tine-agent" "$AGENT"
chmod 0755 "$R/usr/bin/tine-agent"
: >"$R/etc/machine-id" # filled on first boot by rcS
chown -R 0:0 "$R"
truncate -s "$ROOTFS_SIZE" "$STAGE/$ROOTFS_FILE"
mkfs.ext4 -q -F -L tine-root -m 0 -d "$R" "$STAGE/$ROOTFS_FILE"

# --- install --------------------------------------------------------------------------
ROOTFS_SIZE_BYTES=$(stat -c %s "$STAGE/$ROOTFS_FILE")
cat >"$STAGE/manifest.json" <<EOF
{
  "schema": 1,
  "name": "default",
  "kernel": "$KERNEL_FILE",
  "initrd": "$INITRD_FILE",
  "rootfs": "$ROOTFS_FILE",
  "rootfs_format": "raw",
  "rootfs_size": $ROOTFS_SIZE_BYTES,
  "cmdline": "$CMDLINE",
  "kernel_version": "$KVER",
  "kernel_package": "$KPKG=$KPKG_VER",
  "busybox_package": "busybox-static=$BB_VER",
  "agent_sha256": "$AGENT_SHA",
  "agent_port": "tine.agent",
  "inputs_hash": "$INPUTS_HASH"
}
EOF
chmod 0644 "$STAGE/manifest.json" "$STAGE/$INITRD_FILE" "$STAGE/vmlinux"
# Instances use the rootfs only as a read-only backing file.
chmod 0444 "$STAGE/$ROOTFS_FILE"
mv "$STAGE/vmlinux" "$OUT/$KERNEL_FILE"
mv "$STAGE/$INITRD_FILE" "$OUT/$INITRD_FILE"
mv "$STAGE/$ROOTFS_FILE" "$OUT/$ROOTFS_FILE"
sync -f "$OUT/$ROOTFS_FILE"
mv "$STAGE/manifest.json" "$OUT/manifest.json"
sync -f "$OUT/manifest.json"

log "done in $(($(date +%s) - start)) s: $OUT"
log "  kernel $KERNEL_FILE ($(du -h "$OUT/$KERNEL_FILE" | cut -f1)), initrd $INITRD_FILE ($(du -h "$OUT/$INITRD_FILE" | cut -f1)), rootfs $ROOTFS_FILE ($(du -h "$OUT/$ROOTFS_FILE" | cut -f1) used of $ROOTFS_SIZE)"
