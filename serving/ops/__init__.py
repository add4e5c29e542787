"""Operations tools: publish a model repository to object storage, roll a version out or back."""
