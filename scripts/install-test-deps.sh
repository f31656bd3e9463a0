#!/bin/sh
# Installs the system packages the test suite needs (Debian): Dovecot for the
# real IMAP backend (and its POP3 server, for the benchmark), Cyrus and Courier
# unpacked beside it (they conflict with it), openssl for the test CAs, Debian's
# python3 with venv for the privilege-drop tests, socat, xinetd and haproxy for the
# inetd and scale-out tests, systemd-analyze for contrib/. With "venv": only python3-venv.
set -eu
courier=""
cyrus=""
if [ "${1:-}" = "venv" ]; then
    pkgs="python3-venv"
else
    pkgs=""
    [ -x /usr/sbin/dovecot ] || pkgs="$pkgs dovecot-imapd"
    # Dovecot's own POP3 server: the peer of the Maildir store in `make bench` (S5)
    [ -x /usr/lib/dovecot/pop3 ] || pkgs="$pkgs dovecot-pop3d"
    command -v openssl >/dev/null 2>&1 || pkgs="$pkgs openssl"
    # privilege-drop tests run pop2gate from a venv of Debian's python3, outside /root
    /usr/bin/python3 -c "import ensurepip" 2>/dev/null || pkgs="$pkgs python3 python3-venv"
    command -v setpriv >/dev/null 2>&1 || pkgs="$pkgs util-linux"
    # inetd mode through real socat and xinetd, scale-out behind haproxy (tests/test_inetd.py,
    # tests/test_scaleout.py); systemd-analyze checks the units in contrib/ (no running systemd needed)
    command -v socat >/dev/null 2>&1 || pkgs="$pkgs socat"
    [ -x /usr/sbin/xinetd ] || pkgs="$pkgs xinetd"
    [ -x /usr/sbin/haproxy ] || pkgs="$pkgs haproxy"
    command -v systemd-analyze >/dev/null 2>&1 || pkgs="$pkgs systemd"
    # Courier-IMAP (tests/courier.py) conflicts with dovecot-imapd: its dependencies from apt,
    # the package itself unpacked into a private root (below)
    { [ -x /usr/sbin/couriertcpd ] && [ -x /usr/sbin/makeuserdb ]; } ||
        pkgs="$pkgs courier-base courier-authlib courier-authlib-userdb libcourier-unicode4 libgamin0 libgdbm6 libidn12"
    [ -x /opt/pop2gate-test/courier/usr/bin/imapd ] || courier=/opt/pop2gate-test/courier
    # Cyrus (tests/cyrus.py) conflicts with dovecot-imapd too: same way, into its own root (below)
    # (again when a shared library of its programs is missing: ldd says "not found")
    cy=/opt/pop2gate-test/cyrus
    { [ -x $cy/usr/lib/cyrus/bin/master ] && [ -x /usr/sbin/saslpasswd2 ] &&
        ! LD_LIBRARY_PATH=$(echo $cy/usr/lib/*-linux-gnu | tr ' ' ':') ldd $cy/usr/lib/cyrus/bin/* 2>/dev/null |
            grep -q "not found"; } || cyrus=$cy
fi
[ -n "$pkgs$courier$cyrus" ] || exit 0
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "need root to install:$pkgs" >&2; exit 1; fi
else SUDO=""; fi
echo "installing:$pkgs"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
[ -z "$courier" ] || {
    echo "unpacking courier-imap into $courier"
    tmp=$(mktemp -d)
    (cd "$tmp" && $SUDO apt-get download -qq courier-imap)
    $SUDO rm -rf "$courier.new"
    $SUDO mkdir -p "$courier.new"
    $SUDO dpkg -x "$tmp"/courier-imap_*.deb "$courier.new"
    $SUDO mv "$courier.new" "$courier"
    rm -rf "$tmp"
}
[ -z "$cyrus" ] || {
    echo "unpacking cyrus-imapd into $cyrus"
    # its shared libraries from apt (not cyrus-common's scripts and MTA), sasl2-bin for saslpasswd2
    libs=$(apt-cache depends cyrus-common cyrus-imapd | awk '$1 == "Depends:" && $2 ~ /^lib/ {print $2}' | sort -u)
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        sasl2-bin libsasl2-modules $libs >/dev/null
    tmp=$(mktemp -d) && chmod 755 "$tmp"  # readable by apt's _apt user
    (cd "$tmp" && $SUDO apt-get download -qq cyrus-common cyrus-imapd)
    $SUDO rm -rf "$cyrus.new" "$cyrus"
    $SUDO mkdir -p "$cyrus.new"
    for deb in "$tmp"/cyrus-common_*.deb "$tmp"/cyrus-imapd_*.deb; do $SUDO dpkg -x "$deb" "$cyrus.new"; done
    $SUDO mv "$cyrus.new" "$cyrus"
    rm -rf "$tmp"
}
