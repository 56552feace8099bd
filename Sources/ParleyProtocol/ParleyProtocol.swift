// ParleyProtocol
