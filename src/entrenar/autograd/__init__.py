"""Autograd: the tape (grad mode, backward), the op registry and gradient checking."""
