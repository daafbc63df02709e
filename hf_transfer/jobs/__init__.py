"""The jobs behind the recipes and the `hf-transfer` command: fine-tuning and linear probing.

They sit above the library and use it; no library module imports a job (as accelerate keeps ``commands/`` over
its library). `common.prepare` loads data and backbone for both.
"""
