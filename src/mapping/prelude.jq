# Helpers every mapping may use, beside jq's own filters. The natives
# (`money`, `minor_units`, `timestamp`, `zoned`) are in src/mapping/jq.rs.

# An id as text, every digit of an integer kept; null stays null.
def id: if . == null then null else tostring end;

# Null values removed from objects, at every depth: an absent optional
# field is then absent, not null.
def compact:
  if type == "object" then with_entries(select(.value != null) | .value |= compact)
  elif type == "array" then map(compact)
  else . end;

# A header's value by name, in any case (`$headers` has lower-cased names).
def header($name): $headers[$name | ascii_downcase];

# `explode`, checked first (src/mapping/jq/bounds.rs).
def explode:
  if length > 1048576 then error("explode: a string of more than 1048576 characters exceeds the limit")
  else _explode end;
