"""Pure math: tensors and lists in, NamedTuples and dataclasses out; imports only torch, the stdlib, r2m.errors
and r2m.utils (never a higher layer of r2m)."""
