"""service-tool: installer and field-service command line."""
