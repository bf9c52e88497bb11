//! Bearer tokens: a token file re-read when it changes, or the OAuth2
//! refresh-token flow with the rotated refresh token written back.
