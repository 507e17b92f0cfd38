"""Data -> tidy pandas tables -> figures. One module per figure family; no model code here."""
