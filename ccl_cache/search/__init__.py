"""Search: FAISS indexes over student or teacher embeddings, exact search, retrieval by example
(``ccl-cache retrieve``) and the offline retrieval benchmark."""
