#!/usr/bin/env bash
# Print the replace block go.mod needs for Kubernetes version $1 (e.g. 1.33.13):
# every staging module k8s.io/kubernetes replaces with ./staging/... is
# replaced here with its published tag v0.<minor>.<patch>.
set -euo pipefail
KV=${1:?usage: gen-replace.sh 1.33.N}
SV=0.${KV#1.}
GOMOD=$(GOTOOLCHAIN=local go mod download -json "k8s.io/kubernetes@v$KV" |
  python3 -c 'import sys,json;print(json.load(sys.stdin)["GoMod"])')
echo 'replace ('
sed -n "s#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 v$SV#p" "$GOMOD"
echo ')'
