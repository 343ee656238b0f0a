//! Plans kept between applies of one process (the daemon's): planning is pure, so the
//! same model on the same host view gives the same plan, without planning again.

use std::cell::RefCell;

use symroute_core::model::Model;
use symroute_core::plan::{self, HostView, Plan};

/// The last plan an apply built, with the model and host view it was built from.
/// Planning is pure, so the same two give the same plan without planning again (a
/// 10,000-selector model takes 6–7 ms, most of a daemon pass that finds nothing to do,
/// and a share of the repair that must wait for it).
#[derive(Default)]
pub struct PlanMemo(RefCell<Option<(Model, HostView, Plan)>>);

impl PlanMemo {
    fn plan(&self, model: &Model, host: &HostView) -> Plan {
        if let Some((m, h, p)) = &*self.0.borrow() {
            if h == host && m == model {
                return p.clone();
            }
        }
        let plan = plan::build(model, host);
        *self.0.borrow_mut() = Some((model.clone(), host.clone(), plan.clone()));
        plan
    }
}

/// `model`'s plan on `host`, from `memo` when it holds it.
pub(crate) fn plan_for(memo: Option<&PlanMemo>, model: &Model, host: &HostView) -> Plan {
    match memo {
        Some(m) => m.plan(model, host),
        None => plan::build(model, host),
    }
}

/// A one-gateway, one-policy config for the unit tests of planning's users here.
#[cfg(test)]
pub(crate) mod fixture {
    use super::Model;

    pub const CONFIG: &str = "[[gateway]]\nname = \"isp1\"\ninterface = \"up1\"\nvia = \"203.0.113.1\"\n\n[[policy]]\nname = \"mail\"\nroute_via = \"isp1\"\n[policy.match]\nprotocol = \"tcp\"\ndestination_port = 25\n";

    pub fn model(text: &str) -> Model {
        symroute_core::config::parse_str(text, "test.toml").expect("config")
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{model, CONFIG};
    use super::*;

    #[test]
    fn the_same_model_and_host_give_the_kept_plan_and_any_change_plans_again() {
        let memo = PlanMemo::default();
        let (m, host) = (model(CONFIG), HostView::default());
        let first = plan_for(Some(&memo), &m, &host);
        assert_eq!(first.nft, plan::build(&m, &host).nft);
        // Kept: the memo holds exactly what was planned for these two.
        assert!(memo
            .0
            .borrow()
            .as_ref()
            .is_some_and(|(km, kh, kp)| km == &m && kh == &host && kp.nft == first.nft));
        // Another model (a port changed), or another host view: planned from them.
        let other = model(&CONFIG.replace("= 25", "= 587"));
        let again = plan_for(Some(&memo), &other, &host);
        assert_eq!(again.nft, plan::build(&other, &host).nft);
        assert_ne!(again.nft, first.nft);
        let mut down = host.clone();
        down.health_down
            .insert("isp1".into(), "health check: lost".into());
        let d = plan_for(Some(&memo), &other, &down);
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            serde_json::to_string(&plan::build(&other, &down)).unwrap()
        );
    }
}
