package daemon

// asymmetricMechanisms lists the public-key mechanisms.
func asymmetricMechanisms() map[uint64]*mechanism {
	return map[uint64]*mechanism{}
}
