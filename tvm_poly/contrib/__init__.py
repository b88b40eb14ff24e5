"""Façades of old ``tvm.contrib`` modules (see :mod:`tvm_poly.relay`)."""
