//! A Partner Center Referrals API emulator, in memory, for loopback tests
//! and for trying referral-sync without an account.
