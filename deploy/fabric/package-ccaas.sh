#!/bin/sh
# Builds a chaincode-as-a-service package for `peer lifecycle chaincode install`.
#
#   package-ccaas.sh [-l LABEL] [-o OUTPUT.tar.gz] [CONNECTION_JSON]
#
# Defaults: label ehr_1.0, output ./<label>.tar.gz, connection.json next to
# this script. The package is the layout the peer expects:
#   metadata.json  {"type":"ccaas","label":"<label>"}
#   code.tar.gz    containing connection.json (and META-INF/ if a directory
#                  META-INF sits next to the connection file)
# Prints the output path; `peer lifecycle chaincode calculatepackageid` gives
# the package id the chaincode server needs as CHAINCODE_ID.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
label=ehr_1.0
out=
while getopts l:o:h opt; do
    case "$opt" in
        l) label=$OPTARG ;;
        o) out=$OPTARG ;;
        h) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "usage: $0 [-l LABEL] [-o OUTPUT.tar.gz] [CONNECTION_JSON]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
conn=${1:-$here/connection.json}
out=${out:-$PWD/$label.tar.gz}

# Fabric accepts labels matching ^[[:alnum:]][[:alnum:]_.+-]*$ only.
case "$label" in
    [A-Za-z0-9]*) ;;
    *) echo "package-ccaas: invalid label '$label' (must start with a letter or digit)" >&2; exit 2 ;;
esac
case "$label" in
    *[!A-Za-z0-9_.+-]*) echo "package-ccaas: invalid label '$label' (allowed: A-Z a-z 0-9 _ . + -)" >&2; exit 2 ;;
esac
[ -f "$conn" ] || { echo "package-ccaas: $conn not found" >&2; exit 1; }
grep -q '"address"' "$conn" || { echo "package-ccaas: $conn has no \"address\"" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
mkdir "$work/src" "$work/pkg"
cp "$conn" "$work/src/connection.json"
conndir=$(cd "$(dirname "$conn")" && pwd)
if [ -d "$conndir/META-INF" ]; then
    cp -R "$conndir/META-INF" "$work/src/META-INF"
fi
printf '{"type":"ccaas","label":"%s"}\n' "$label" > "$work/pkg/metadata.json"
(cd "$work/src" && tar -czf "$work/pkg/code.tar.gz" -- *)
tar -C "$work/pkg" -czf "$out" metadata.json code.tar.gz
echo "$out"
