//! KVM platform (being written).
