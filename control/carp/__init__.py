"""CARP (Common Address Redundancy Protocol) for active-passive appliance pairs: a sans-I/O codec
(:mod:`control.carp.codec`), a sans-I/O state machine (:mod:`control.carp.fsm`) and a thin socket driver."""
