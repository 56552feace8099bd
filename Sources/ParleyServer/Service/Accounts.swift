import ParleyProtocol
import ParleyStore

// Accounts: signup, login, challenge, auth, logout, user. (Being written.)
extension Handler {
    func signup(_ request: Request.Signup) throws -> Outcome { fail(.internal, "not built yet") }
    func login(_ request: Request.Login) throws -> Outcome { fail(.internal, "not built yet") }
    func challenge(_ request: Request.Challenge) throws -> Outcome { fail(.internal, "not built yet") }
    func auth(_ request: Request.Auth) throws -> Outcome { fail(.internal, "not built yet") }
    func logout() throws -> Outcome { fail(.internal, "not built yet") }
    func user(_ request: Request.User) throws -> Outcome { fail(.internal, "not built yet") }
}
