//! The page shell every screen shares, and the formatting of amounts and rates.

use maud::{html, Markup, DOCTYPE};

use aicp_events::domain::access::Principal;

/// A whole page: head, top bar (with sign-out when signed in) and `body`.
///
/// `stream` is the query of the live event stream the page follows (`?buyer=...`), or
/// `None` for a page without live parts; `auth_off` shows that nobody is authenticated.
pub fn page(
    title: &str,
    who: Option<&Principal>,
    auth_off: bool,
    stream: Option<String>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · AICP" }
                // No favicon to fetch (and no 404 in the console).
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body data-stream=[stream] {
                header.top {
                    a.brand href="/" { "AICP" }
                    nav {
                        a href="/dashboard" { "Dashboard" }
                        a href="/docs" { "API docs" }
                    }
                    span.spacer {}
                    @if let Some(who) = who {
                        span.who #who { (who.role()) " " strong { (id_of(who)) } }
                        form.inline method="post" action="/sign-out" {
                            button #sign-out type="submit" { "Sign out" }
                        }
                    }
                    span #live .live title="Live updates: connecting" aria-hidden="true" {}
                }
                @if auth_off {
                    p #auth-off .banner role="status" {
                        "Authentication is off (--auth none): anyone who reaches this port acts as any buyer, agent or admin. For a developer's machine only."
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The id part of a principal, as shown next to its role.
fn id_of(who: &Principal) -> String {
    match who {
        Principal::Buyer(id) => id.to_string(),
        Principal::Agent(id) => id.to_string(),
        Principal::Worker(_) => who.to_string(),
        Principal::Admin | Principal::Coordinator => String::new(),
    }
}

/// `400000` as `400,000 sat`.
pub fn sats(amount: i64) -> String {
    format!("{} sat", thousands(amount))
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Basis points as a percentage: `9500` as `95.0%`.
pub fn percent_bp(bp: u32) -> String {
    format!("{:.1}%", f64::from(bp) / 100.0)
}

/// A multiplier in thousandths as `2.00x`.
pub fn multiplier(milli: u32) -> String {
    format!("{:.2}x", f64::from(milli) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_like_money() {
        assert_eq!(sats(400_000), "400,000 sat");
        assert_eq!(sats(0), "0 sat");
        assert_eq!(sats(-1_234_567), "-1,234,567 sat");
        assert_eq!(thousands(999), "999");
        assert_eq!(percent_bp(9500), "95.0%");
        assert_eq!(multiplier(1800), "1.80x");
    }
}
