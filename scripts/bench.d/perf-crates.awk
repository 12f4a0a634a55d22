# Reads `perf script -F ip,sym,dso` output and attributes each sample (its self time) to the
# nearest frame of a named crate other than core/alloc/std/bytes (so malloc, memmove and
# syscalls count for the crate that called them), then prints the share of each crate.
function crate(sym,   s, n, parts, i, c) {
  s = sym
  gsub(/[<>&*(){}\[\], ]/, " ", s)
  n = split(s, parts, " ")
  for (i = 1; i <= n; i++) {
    if (parts[i] ~ /^[a-z_][a-z0-9_]*::/) {
      c = parts[i]; sub(/::.*/, "", c)
      if (c !~ /^(core|alloc|std|bytes|hashbrown|futures_core|futures_util|pin_project_lite|__rust|dyn|impl)$/) return c
    }
  }
  return ""
}
/^$/ { if (inside) { total++; k = (found == "" ? (leafdso ~ /kernel/ ? "[kernel, no user frame]" : "[other: " leaf "]") : found); cnt[k]++ } inside = 0; found = ""; next }
{
  line = $0; sub(/^[ \t]*[0-9a-f]+ /, "", line)
  dso = line; sub(/.*\(/, "", dso); sub(/\)$/, "", dso)
  sym = line; sub(/ \([^()]*\)$/, "", sym)
  if (!inside) { inside = 1; leaf = sym; leafdso = dso }
  if (found == "" && dso !~ /libc|kernel|vdso|libm|unknown/) { c = crate(sym); if (c != "") found = c }
}
END {
  if (inside) { total++; cnt[found == "" ? "[unattributed]" : found]++ }
  for (k in cnt) printf "%6.2f%%  %s\n", 100 * cnt[k] / total, k | "sort -rn | head -n 25"
}
