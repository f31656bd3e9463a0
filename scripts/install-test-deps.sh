#!/bin/sh
# Installs the system packages the test suite needs (Debian): Dovecot for the
# real IMAP backend, openssl for the test CA, Debian's python3 with venv for the
# privilege-drop tests. With "venv": only python3-venv.
set -eu
if [ "${1:-}" = "venv" ]; then
    pkgs="python3-venv"
else
    pkgs=""
    [ -x /usr/sbin/dovecot ] || pkgs="$pkgs dovecot-imapd"
    command -v openssl >/dev/null 2>&1 || pkgs="$pkgs openssl"
    # privilege-drop tests run pop2gate from a venv of Debian's python3, outside /root
    /usr/bin/python3 -c "import ensurepip" 2>/dev/null || pkgs="$pkgs python3 python3-venv"
    command -v setpriv >/dev/null 2>&1 || pkgs="$pkgs util-linux"
fi
[ -n "$pkgs" ] || exit 0
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "need root to install:$pkgs" >&2; exit 1; fi
else SUDO=""; fi
echo "installing:$pkgs"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
