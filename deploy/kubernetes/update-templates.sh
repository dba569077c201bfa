#!/usr/bin/env bash
# Writes the list of template files of the ConfigMap aftercare-templates
# into kustomization.yaml (between its "BEGIN templates" and "END templates"
# lines), from the repository's templates/ folder. Run it after adding or
# removing a template file; an edited file needs nothing (kustomize reads
# the files when it builds). tests/integration/deploy.rs fails while the list is stale.
#
# Each key is the file's path under templates/ with "/" written "__"
# (ConfigMap keys cannot hold "/"); the Deployment's init container turns
# them back into the folder tree.
set -euo pipefail
cd "$(dirname "$0")"
root=../../templates
block=$(cd "$root" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | while read -r path; do
  case "$path" in *__*) echo "templates/$path: a name with \"__\" cannot be a key" >&2; exit 1 ;; esac
  printf '      - %s=../../templates/%s\n' "${path//\//__}" "$path"
done)
awk -v block="$block" '
  /# BEGIN templates/ { print; print block; skip = 1; next }
  /# END templates/ { skip = 0 }
  !skip { print }
' kustomization.yaml > kustomization.yaml.tmp
mv kustomization.yaml.tmp kustomization.yaml
