# Sourced by the guest build scripts: `need PACKAGE:PROBE...` makes sure each
# Debian package is installed, where PROBE is a command on PATH or a file path.
# As root with apt-get it installs what is missing, saying which; otherwise it
# prints the one apt-get line to run and exits 1.
need() {
  local missing=() spec pkg probe
  for spec in "$@"; do
    pkg=${spec%%:*} probe=${spec#*:}
    case "$probe" in
      /*) [ -e "$probe" ] && continue ;;
      *) command -v "$probe" >/dev/null 2>&1 && continue ;;
    esac
    missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "guest: installing ${missing[*]} (apt-get)" >&2
    apt-cache policy "${missing[0]}" 2>/dev/null | grep -q 'Candidate: [0-9]' || apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { echo "guest: apt-get install ${missing[*]} failed" >&2; exit 1; }
    return 0
  fi
  echo "guest: missing ${missing[*]}; install with: sudo apt-get install ${missing[*]}" >&2
  exit 1
}
