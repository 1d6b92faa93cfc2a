"""The method's prompts and their parsers: chat formats per model family, the solver instruction, the solvability
judge and the optimiser's rewrite requests. Text only: nothing here loads a model or a tokenizer."""
