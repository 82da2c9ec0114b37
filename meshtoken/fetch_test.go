package meshtoken

// wait blocks until no fetch runs.
func (f *backgroundFetch) wait() {
	f.mu.Lock()
	done := f.fetching
	f.mu.Unlock()
	if done != nil {
		<-done
	}
}
