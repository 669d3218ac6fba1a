//! Removing meta voters at run time (`MetaNode::remove_voter`, what `strata cluster meta
//! remove` calls): a removed follower and a removed leader both hear that they no longer vote
//! (they end as learners in their own view, never candidates), the group goes on, and the
//! refusals (an unknown id, the last voter) change nothing.

mod common;

use common::{create_topic, eventually, Cluster, Writer};
use openraft::ServerState;
use strata_meta::MetaError;

fn voters(view: &strata_meta::MembershipView) -> Vec<u64> {
    view.voters.keys().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_voters_stop_voting_and_the_group_goes_on() {
    let mut cluster = Cluster::start(&[1, 2, 3]).await;
    let leader = cluster.leader().await;
    let followers = cluster.followers(leader);
    let (gone, stays) = (followers[0], followers[1]);
    cluster.node(stays).write(create_topic(2)).await.unwrap();
    let mut writer = Writer::default();
    writer.commit(cluster.node(gone), 0).await;

    // Unknown ids and non-voters are refused; nothing changes.
    let err = cluster.node(stays).remove_voter(9).await.unwrap_err();
    assert!(
        matches!(&err, MetaError::Membership { reason, retryable: false } if reason.contains("node 9 is not a meta voter")),
        "{err}"
    );
    assert_eq!(voters(&cluster.node(stays).membership()), [1, 2, 3]);

    // A follower, removed through another follower: it is gone from the group, and it knows
    // it no longer votes (it is a learner in its own view, so it never campaigns).
    let view = cluster.node(stays).remove_voter(gone).await.unwrap();
    let mut expected: Vec<u64> = vec![leader, stays];
    expected.sort();
    assert_eq!(voters(&view), expected);
    assert!(view.learners.is_empty() && !view.joint, "{view:?}");
    let removed = cluster.node(gone).clone();
    eventually("the removed follower to know it is a learner", || {
        let m = removed.raft().metrics().borrow().clone();
        (m.state == ServerState::Learner).then_some(())
    })
    .await;
    assert!(!removed.membership().voters.contains_key(&gone));
    writer.commit(cluster.node(stays), 1).await;
    cluster.stop(gone).await;

    // The leader removes itself: it steps down and the last voter leads alone.
    let view = cluster.node(leader).remove_voter(leader).await.unwrap();
    assert_eq!(voters(&view), [stays]);
    assert!(view.learners.is_empty(), "{view:?}");
    eventually("the remaining voter to lead", || {
        cluster.node(stays).is_leader().then_some(())
    })
    .await;
    let old = cluster.node(leader).clone();
    eventually("the removed leader to know it is a learner", || {
        let m = old.raft().metrics().borrow().clone();
        (m.state == ServerState::Learner).then_some(())
    })
    .await;
    cluster.stop(leader).await;
    writer.commit(cluster.node(stays), 0).await;
    assert_eq!(
        cluster.node(stays).read().indexed_end(common::TOPIC, 0),
        writer.end(0)
    );

    // The last voter cannot be removed.
    let err = cluster.node(stays).remove_voter(stays).await.unwrap_err();
    assert!(
        matches!(&err, MetaError::Membership { reason, .. } if reason.contains("only meta voter")),
        "{err}"
    );
    assert_eq!(voters(&cluster.node(stays).membership()), [stays]);
    cluster.shutdown().await;
}
