#!/bin/sh
# Build the Debian package of dualwrite with dpkg-deb (no source package, no
# debhelper): compile with Debian's hardening flags into $B, `make install`
# into a staging root laid out as Debian wants it (units in /lib/systemd,
# man pages and the changelog compressed, binaries stripped), add the
# control files of tools/debian/, and run lintian on the result when it is
# installed (its findings are printed, not fatal).
#   tools/debian/build.sh OUTDIR        (B: build directory, default build-deb)
set -eu
cd "$(dirname "$0")/../.."
out=${1:-build-deb}
B=${B:-build-deb}
mkdir -p "$out"
out=$(cd "$out" && pwd)
version=$(sed -n '1s/^dualwrite (\([^)]*\)).*/\1/p' tools/debian/changelog)
upstream=${version%-*}
grep -q "DW_VERSION \"$upstream\"" daemon/server.h ||
	{ echo "deb: changelog version $upstream is not DW_VERSION in daemon/server.h" >&2; exit 1; }
arch=$(dpkg --print-architecture)

export DEB_BUILD_MAINT_OPTIONS=hardening=+all
# _FORTIFY_SOURCE marks ftruncate() & co. warn_unused_result, which a (void)
# cast does not silence in gcc (lib/spool.c truncates a half-written frame
# on a path that is already failing); a packaging build must not stop there.
cflags="$(dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS) -Wno-error=unused-result"
ldflags=$(dpkg-buildflags --get LDFLAGS)
make --no-print-directory -j2 B="$B" CFLAGS="$cflags" LDFLAGS="$ldflags" \
	"$B/dualwrited" "$B/dualwrite"

work=$(mktemp -d "${TMPDIR:-/tmp}/dw-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
make --no-print-directory install B="$B" DESTDIR="$root" PREFIX=/usr \
	SYSTEMDDIR=/lib/systemd/system >/dev/null
strip --remove-section=.comment --remove-section=.note --strip-unneeded \
	"$root/usr/sbin/dualwrited" "$root/usr/bin/dualwrite"
gzip -9n "$root"/usr/share/man/man*/*
doc=$root/usr/share/doc/dualwrite
install -m 0644 tools/debian/copyright "$doc/copyright"
gzip -9n <tools/debian/changelog >"$doc/changelog.Debian.gz"
install -D -m 0644 tools/debian/lintian-overrides "$root/usr/share/lintian/overrides/dualwrite"
# The package ships /etc/dualwrite world-readable; postinst hands it to the
# dualwrite group (0750/0640) once that group exists.
chmod 0755 "$root/etc/dualwrite"
chmod 0644 "$root/etc/dualwrite/dualwrited.conf"

# Shared-library dependencies, computed the Debian way.
mkdir -p "$work/src/debian"
printf 'Source: dualwrite\n\nPackage: dualwrite\nArchitecture: any\n' >"$work/src/debian/control"
depends=$(cd "$work/src" && dpkg-shlibdeps -O -e"$root/usr/sbin/dualwrited" -e"$root/usr/bin/dualwrite" 2>/dev/null |
	sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
	-e "s/@DEPENDS@/$depends/" tools/debian/control.in >"$root/DEBIAN/control"
install -m 0644 tools/debian/conffiles "$root/DEBIAN/conffiles"
install -m 0755 tools/debian/postinst tools/debian/prerm tools/debian/postrm "$root/DEBIAN/"
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z |
	xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

deb=$out/dualwrite_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "deb: $deb"
if command -v lintian >/dev/null 2>&1; then
	echo "deb: lintian:"
	lintian --info --display-info --pedantic "$deb" || true
fi
