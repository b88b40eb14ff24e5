"""The ``polyinf`` accelerator target: NeuronCore ISA, codegen, simulator and hardware configs."""
