"""The Nexus portal: the B2B application that the relay makes live."""
