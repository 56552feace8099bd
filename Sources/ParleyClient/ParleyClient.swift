// ParleyClient
