"""Codegen: the graph and its plan written as C (model.c/model.h), for microtile's firmware or a user's."""
