from sipagent.sip.registration import (
    BindingProbe,
    ProbeMode,
    ProbeVerdict,
    RegistrationPolicy,
    RegistrationState,
    granted_expires,
)


def make_policy():
    return RegistrationPolicy(300, registrar="127.0.0.1:5060", contact="<sip:a@127.0.0.1:5062>")


def test_success_schedules_refresh_before_expiry():
    policy = make_policy()
    policy.attempt_started()
    assert policy.status.state == RegistrationState.REGISTERING
    delay = policy.registered(now=100.0, granted_expires=60)
    assert policy.status.state == RegistrationState.REGISTERED
    assert policy.status.expires_at == 160.0
    assert 1.0 <= delay < 60 - 4
    assert policy.status.as_dict(now=130.0)["expires_in"] == 30.0


def test_short_lifetimes_still_refresh_in_time():
    assert RegistrationPolicy.refresh_delay(8) < 8
    assert RegistrationPolicy.refresh_delay(3600) == 1800


def test_rejections_are_explained_and_back_off():
    policy = make_policy()
    delays = [policy.rejected(403, "Forbidden") for _ in range(7)]
    assert policy.status.state == RegistrationState.FAILED
    assert "wrong password" in policy.status.reason and policy.status.last_status_code == 403
    assert delays == sorted(delays) and delays[-1] == 60.0
    policy.registered(0.0, 300)
    assert policy.rejected(404, "Not Found") == 5.0  # back-off resets after a success
    assert "does not exist" in policy.status.reason


def test_unreachable_retries_fast_so_recovery_is_quick():
    policy = make_policy()
    assert policy.unreachable("REGISTER timed out") <= 1.0
    assert "no answer from registrar 127.0.0.1:5060" in policy.status.reason


def test_binding_lost_marks_failed_with_reason():
    policy = make_policy()
    policy.registered(0.0, 300)
    policy.binding_lost(404)
    assert policy.status.state == RegistrationState.FAILED
    assert "binding lost" in policy.status.reason


def test_granted_expires_prefers_our_contact_param():
    contacts = ["<sip:other@1.2.3.4>;expires=10", "<sip:agent@127.0.0.1:5062>;expires=120"]
    assert granted_expires(contacts, "3600", "sip:agent@127.0.0.1:5062", 300) == 120
    assert granted_expires([], "90", "sip:agent@127.0.0.1:5062", 300) == 90
    assert granted_expires([], None, "sip:agent@127.0.0.1:5062", 300) == 300


def test_binding_probe_trusts_options_that_come_back_to_us():
    probe = BindingProbe()
    assert probe.options_answered(200, first_after_register=True) == ProbeVerdict.KEEP
    assert probe.mode == ProbeMode.OPTIONS
    # Once OPTIONS reached us, a 404 is a lost binding, even twice right after REGISTER.
    for _ in range(3):
        assert probe.options_answered(404, first_after_register=True) == ProbeVerdict.LOST
    assert probe.mode == ProbeMode.OPTIONS and not probe.uses_binding_query


def test_binding_probe_switches_to_queries_when_challenged():
    probe = BindingProbe()
    assert probe.options_answered(407, first_after_register=True) == ProbeVerdict.KEEP
    assert probe.uses_binding_query
    assert probe.options_answered(404, first_after_register=True) == ProbeVerdict.KEEP


def test_binding_probe_switches_after_two_404s_each_right_after_register():
    probe = BindingProbe()
    assert probe.options_answered(404, first_after_register=True) == ProbeVerdict.LOST
    assert probe.mode == ProbeMode.SUSPECT
    assert probe.options_answered(480, first_after_register=True) == ProbeVerdict.KEEP
    assert probe.uses_binding_query


def test_binding_probe_a_later_404_is_a_real_loss_and_clears_the_suspicion():
    probe = BindingProbe()
    probe.options_answered(404, first_after_register=True)
    assert probe.options_answered(404, first_after_register=False) == ProbeVerdict.LOST
    assert probe.mode == ProbeMode.UNKNOWN
    assert probe.options_answered(404, first_after_register=True) == ProbeVerdict.LOST
    assert probe.mode == ProbeMode.SUSPECT  # needs two in a row to switch
    assert probe.options_answered(503, first_after_register=False) == ProbeVerdict.KEEP
